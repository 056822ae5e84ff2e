"""The chat loop: retrieval -> injection -> generation -> write-back, and its HTTP endpoints.

Wiring (see :mod:`service.chat.mount`): ``mount_chat(app, ChatSettings(), cache_dir=settings.data_dir)``.
"""
