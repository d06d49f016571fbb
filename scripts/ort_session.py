"""ONNX Runtime sessions with the engine's settings (crates/tiergate-engine/src/session_options.rs),
shared by the bench scripts so that a graph measured alone runs as the engine runs it: one inter-op
thread, sequential execution, all graph optimisations, the CPU memory arena off, and intra-op spinning
off unless an entry turns it on."""

import onnxruntime as ort

SPINNING_OFF = {"session.intra_op.allow_spinning": "0"}


def engine_options(threads, entries=None, profile_prefix=None):
    """`SessionOptions` with `threads` intra-op threads; `entries` (session config keys) on top of the
    engine's, e.g. {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": "20"}."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    for key, value in {**SPINNING_OFF, **(entries or {})}.items():
        options.add_session_config_entry(key, value)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def engine_session(path, threads, entries=None, profile_prefix=None):
    """A CPU session of the graph at `path` with `engine_options`."""
    return ort.InferenceSession(str(path), engine_options(threads, entries, profile_prefix),
                                providers=["CPUExecutionProvider"])


def spinning(enabled, spin_us=0):
    """The config entries of the engine's `intra_op_spinning` and `intra_op_spin_duration_us`."""
    entries = {"session.intra_op.allow_spinning": "1" if enabled else "0"}
    if enabled and spin_us:
        entries["session.intra_op.spin_duration_us"] = str(spin_us)
    return entries
