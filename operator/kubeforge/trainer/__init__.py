"""The reference trainer: the in-container entrypoint of the trainer image (PyTorch DDP under torchrun).

Run it as ``torchrun --nproc-per-node N -m kubeforge.trainer --model kubeforge.trainer.models:MLP``
(or the ``kubeforge-train`` console script); the language model is ``--model
kubeforge.trainer.language_model:ByteTransformer --optimizer adamw --lr 0.003 --export-format python-llm``.
A TrainingJob's workers see the rendezvous environment torchrun expects (``MASTER_ADDR``,
``MASTER_PORT``, ``PET_*``) plus the ``KUBEFORGE_*`` variables below, so the same image runs
unchanged on a laptop, on CPU in tests, and on GPU pods.

Modules, one job each:

- ``config``: command-line flags and ``KUBEFORGE_*`` environment variables -> ``TrainerConfig``.
- ``distributed``: the process group from the torchrun environment (nccl on CUDA, else gloo).
- ``models``: small reference models and ``module.path:ClassName`` loading.
- ``language_model``: the byte-level decoder-only transformer (``ByteTransformer``), with a KV-cache forward.
- ``data``: the synthetic, deterministic dataset and a resumable ``DistributedSampler``.
- ``text_data``: the language model's shipped corpus (``corpus/``), cut into training and validation windows.
- ``tasks``: what a model learns (classification or language modelling), and validation loss.
- ``rng``: seeding and capturing/restoring RNG states.
- ``atomic``: write-temp, fsync, rename.
- ``checkpoint``: ``ckpt-<step>.pt`` files: save, validate, find the newest complete one, prune.
- ``progress``: ``progress.json``, the file the operator reads (format documented there).
- ``preemption``: SIGTERM -> a flag every rank agrees on at a step boundary.
- ``storage``: output URIs (local path, ``pvc://claim/path``) -> local paths.
- ``export``: the Triton model repository (TorchScript + ``config.pbtxt``).
- ``triton_model``: the Python-backend ``model.py`` the exporter copies next to the TorchScript file.
- ``llm_export``: a language model as a streaming (decoupled) Triton model (``--export-format python-llm``).
- ``triton_llm_model`` and ``generation``: that model's ``model.py`` and its engine (sampling, stop
  sequences, continuous batching over a KV cache), copied beside the TorchScript file.
- ``loop``: the training loop.
- ``__main__``: wires them together.

Environment variables (a flag of the same meaning wins over its variable):

=============================  =========================================================
``KUBEFORGE_CHECKPOINT_DIR``   ``--checkpoint-dir``: checkpoints and ``progress.json``
``KUBEFORGE_OUTPUT_URI``       ``--output-uri``: Triton model repository to export to
``KUBEFORGE_MODEL_NAME``       ``--model-name``: model name in that repository
``KUBEFORGE_EXPORT_FORMAT``    ``--export-format``: ``python`` (default), ``pytorch`` or ``python-llm``
``KUBEFORGE_PVC_ROOT``         where ``pvc://<claim>/`` is mounted (default ``/mnt/pvc``)
``KUBEFORGE_TERMINATION_LOG``  ``--termination-log``: progress copy (``/dev/termination-log``)
=============================  =========================================================

Exit codes: 0 when training finished (and the model was exported), 2 for bad arguments,
143 (128 + SIGTERM) after a preemption checkpoint, so the TrainingJob's failure policy
retries the gang and the next attempt resumes from that checkpoint.
"""
