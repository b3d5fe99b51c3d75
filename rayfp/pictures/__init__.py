"""Pictures of a fingerprint space (matplotlib, `rayfp[plots]`): the CLI writes them to files,
the cloud serves them over HTTP (rayfp.cloud.pictures). Figures are built without pyplot, so
replica threads can draw at the same time."""
