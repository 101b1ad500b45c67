"""digitgen's HTTP service: FastAPI routes around one continuous-batching
engine worker. Entry points: `app.main:create_app` (an app factory, also for
`uvicorn app.main:create_app --factory`) and `app.main:serve`."""
