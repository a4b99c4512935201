"""The runtime behind the public API: service, pipelines, durable queues, senders,
dead letters, storage layout and the admin server.  Nothing here is public:
plugins never import it (``make lint`` enforces that with import-linter)."""
