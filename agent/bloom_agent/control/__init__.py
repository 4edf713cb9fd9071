"""The wire: the control socket, who is calling, the protocol, and its client. It knows no policy:
the daemon hands it a dispatch function."""
