"""The application layer: the `haic` command line and the timed video -> answer pipeline.

``cli`` (the commands, one module each: ``info``, ``demo``, ``run``, ``chat``, ``parity``; one-line
errors and the exit statuses of ``errors``), ``common`` (options and set-up: device, dtype,
config, tokenizer, template, model, in the order that fails cheaply), ``generation`` (sampling
flags, ``--stream``), ``pipeline`` (`StageClock` and the timed pipeline: ``encode`` /
``respond`` / ``answer``), ``e2e`` and ``prune_e2e`` (the end-to-end benchmarks, on that
pipeline). Nothing below imports this package.
"""
