"""The live status page the gateway serves at ``/``: this process's metrics, at a glance."""
