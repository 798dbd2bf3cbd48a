"""The coordinator service: OpenAI-compatible API, batching, finalization.

Built by the coordinator issue; today the protocol it posts to lives in
contracts/ and its leaf and batch formats in opinfer/trace/leaf.py."""
