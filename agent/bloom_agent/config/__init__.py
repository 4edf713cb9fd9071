"""Configuration: the agent's file, app files, health-check declarations, the host's paths. Data only:
parsed, checked and handed to the rest; nothing here acts."""
