"""
WebAssembly agents: the wasmtime runtime, the agent ABI and the lifecycle.
"""
