"""
The paper's whole pipeline on a built-in synthetic benchmark, with seeds; ``tools/run_pipeline.py``
is its command line:

    python tools/run_pipeline.py --bench faces|voc --preset smoke|cpu|gpu --seeds K --out DIR \
        [--stages STAGE ...] [--force] [--num-gpus N] [KEY VALUE ...]
    python tools/run_pipeline.py --report RESULTS_JSON ... [--compare ROW_A ROW_B ...]

Stages, in order (paper §3, Tables 2-5 and 7-8):

    data                      the synthetic set (quant_mimic.data.synthetic), under DIR/datasets
    teacher                   full-precision teacher (stage 1)
    teacher_quantized         teacher finetuned with its feature map quantized (stage 2, eq. 1-2)
    scratch                   the tiny student alone
    scratch_quantized         the student with its output quantized (Table 5; only when named)
    mimic                     Li et al.'s mimic from the full-precision teacher (eq. 5)
    quant_mimic_teacher_only  Q on the teacher side only (Table 4, middle row)
    quant_mimic               Quantization Mimic, Q on both sides (eq. 6)

Every training stage runs ``train_net.py`` (Detectron2's ``DefaultTrainer`` through ``launch``) on
the benchmark's configs in ``configs/Synth``, with the preset's overrides, then the trainer's final
evaluation on the val split. Teacher stages run once; student stages once per seed (``SEED`` set).
A stage whose ``model_final.pth`` and ``final_metrics.json`` exist is skipped (``--force`` redoes
it); an interrupted stage resumes from its last checkpoint; a student that diverges (Inf/NaN) is
recorded as such and the others go on. The students mimic exactly the teacher that was trained:
``MODEL.MIMIC.TEACHER.CONFIG_FILE`` is the teacher stage's dumped ``config.yaml``.

Writes into DIR: ``results.json`` (one record per run, :mod:`.records`), ``results.md`` (mean ± std
over seeds beside the paper's rows, :mod:`.tables`), ``results.png`` (mean bars, one point per
seed), ``mismatch.png`` (Fig. 5, by an evaluation pass, see
:func:`quant_mimic.diagnostics.collect_mimic_statistics`), ``mimic_statistics.json`` (the Q
diagnostics of every mimic student) and, for runs evaluated during training
(``TEST.EVAL_PERIOD``), ``learning_curves.png``. Presets are yaml files in
``configs/Synth/presets`` (or a path to one).

Modules, by role: :mod:`.benches` (stages, benchmarks, run folders), :mod:`.plan` (presets, stage
planning, overrides, data), :mod:`.runner` (training and the run loop), :mod:`.records`
(results.json), :mod:`.tables` (mean ± std, Welch, markdown), :mod:`.plots`, :mod:`.progress` (ETA),
:mod:`.cli`.
"""

# The public names of every role, one flat namespace (each module's __all__).
from . import benches, cli, plan, plots, progress, records, runner, tables
from .benches import *  # noqa: F401,F403
from .cli import *  # noqa: F401,F403
from .plan import *  # noqa: F401,F403
from .plots import *  # noqa: F401,F403
from .progress import *  # noqa: F401,F403
from .records import *  # noqa: F401,F403
from .runner import *  # noqa: F401,F403
from .tables import *  # noqa: F401,F403

__all__ = [
    name
    for module in (benches, plan, runner, records, tables, plots, progress, cli)
    for name in module.__all__
]
