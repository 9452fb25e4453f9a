"""How much of one heads call is fixed per-call cost (what merging requests into one ORT call could amortize)?
heads.onnx of ART (`genrec export --precision fp32`), one intra-op thread, medians of 200 calls after 20 warm-up
calls, three rounds. Usage: python benchmarks/results/heads-fixed-cost/probe.py ART_DIR"""
import sys
import time

import numpy as np
import onnxruntime as ort

opts = ort.SessionOptions()
opts.intra_op_num_threads = opts.inter_op_num_threads = 1
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
sess = ort.InferenceSession(f"{sys.argv[1]}/fp32/heads.onnx", opts, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
dim = sess.get_inputs()[0].shape[1]
n_stats = next(i.shape[1] for i in sess.get_inputs() if i.name == "candidate_stats")
n_topics = next(i.shape[0] for i in sess.get_inputs() if i.name == "user_profile")


def feeds(h: int, c: int) -> dict[str, np.ndarray]:
    return {"item_vectors": rng.standard_normal((h + c, dim)).astype(np.float32),
            "history_category": rng.integers(1, 5, h), "history_subcategory": rng.integers(1, 5, h),
            "candidate_category": rng.integers(1, 5, c), "candidate_subcategory": rng.integers(1, 5, c),
            "history_stats": (rng.random((h, n_stats)) * 5).astype(np.float32),
            "candidate_stats": (rng.random((c, n_stats)) * 5).astype(np.float32),
            "user_profile": np.zeros(n_topics, np.float32)}


outs = ["scores", "topic_affinity", "category_confidence", "user_topics"]
for rnd in range(3):
    for h, c in ((1, 1), (10, 10), (50, 100), (50, 400)):
        f = feeds(h, c)
        for explain in (False, True):
            names = outs + (["explanation"] if explain else [])
            for _ in range(20):
                sess.run(names, f)
            t = []
            for _ in range(200):
                t0 = time.perf_counter()
                sess.run(names, f)
                t.append(time.perf_counter() - t0)
            print(rnd, f"H{h} C{c} explain={explain}: median {1e3 * np.median(t):.3f} ms", flush=True)
