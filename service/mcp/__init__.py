"""The Sealmem MCP server (Model Context Protocol, official ``mcp`` SDK): tools that let a model remember,
recall, list and forget memories of the one subject its subject token is bound to.

- :mod:`service.mcp.tools`: the tools, one implementation calling the REST API;
- :mod:`service.mcp.stdio`: ``sealmem mcp``, stdio transport against a remote Sealmem;
- :mod:`service.mcp.http`: the app's streamable-HTTP endpoint ``/mcp``, calling the app's REST API in process.
"""
