"""The application layer: the `haic` command line and the timed video -> answer pipeline.

``cli`` (the commands, one module each: ``info``, ``demo``, ``run``, ``parity``), ``common``
(model / device / dtype / tokenizer / checkpoint set-up), ``pipeline`` (`StageClock` and the
timed pipeline), ``e2e`` and ``prune_e2e`` (the end-to-end benchmarks, on that pipeline).
Nothing below imports this package.
"""
