"""What the agent keeps: the state database, releases on disk, version syntax. No policy: the
deployment code decides, this remembers."""
