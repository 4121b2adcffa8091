"""Sandboxes for SWE-Full: where the agent's shell commands and the instance's tests run.

`base` holds what every backend shares (limits, a command's result, the `Sandbox` protocol);
`local` runs each command under bubblewrap on a private copy of the repository; `environment`
builds and caches the per-repository Python environment the local backend mounts; `docker`
drives the official SWE-bench harness images for users who have Docker.
"""
