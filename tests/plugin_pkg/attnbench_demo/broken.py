raise ImportError("attnbench_demo.broken is broken on purpose")
