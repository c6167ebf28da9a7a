"""The LLM engine: any request (messages + params + kind) to a stored, classified response."""
