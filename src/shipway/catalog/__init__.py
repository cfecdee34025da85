"""catalog: the records every feature reads (deployments, environments, versions, releases)."""
