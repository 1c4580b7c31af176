"""OpenNebula 1.4's OCCI service on the cloud core (see server.py)."""
