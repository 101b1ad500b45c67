"""The service's routes, one module per group (FastAPI's APIRouter each)."""
