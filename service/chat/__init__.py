"""The chat loop: retrieval -> injection -> generation -> write-back, and its HTTP endpoints.

Wiring: :func:`service.app.create_app` includes :data:`service.chat.routes.router` and, in the app's lifespan,
runs a :class:`~service.chat.runtime.ChatRuntime` (:func:`service.chat.runtime.running_chat`) on
``app.state.chat``.
"""
