"""context: OpenNebula VM templates → resolved context → context.sh and ISOs → a running VM."""
