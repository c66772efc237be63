"""Ray connectivity and resources: local head, Jobs API client, storage, worker groups."""
