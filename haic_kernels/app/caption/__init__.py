"""`haic caption`: caption a whole dataset, resumably, on one machine or with Ray Data.

``plan`` (manifest entries, unique ids, pending units), ``store`` (the output folder: shards
complete or absent, job.json, resume), ``captioner`` (`JobSpec`, decoding a group of entries,
the model stage: ragged batches to the fast model, rows), ``job`` (rows -> shards, progress,
throughput accounting), ``embedded`` (the default engine: decode threads ahead of the model),
``ray_engine`` (Ray Data actors; Ray is imported only there, and only when used),
``testpoints`` (where tests pause or kill a job), ``command`` (the command line).
"""
