"""The daemon's HTTP doors (docs/api.md), served by aiohttp.web on the daemon's event loop.

- front.py    Front: the operations every door calls (track, submit, cancel, list, show, events, …)
- control.py  the control API's routes
- openapi.py  the OpenAPI document of the control API (/openapi.json)
- app.py      the applications and their listeners (Unix socket, TCP), /healthz and /readyz
"""
