"""The HTTP server (issue 4): the LangGraph Server API as `langgraph-sdk` speaks it, plus a simple
chat endpoint, auth, metrics. `create_app()` lives in `app.server.app`."""
