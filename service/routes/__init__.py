"""HTTP routes, one module per area; each is an ``APIRouter`` included by :func:`service.app.create_app`."""
