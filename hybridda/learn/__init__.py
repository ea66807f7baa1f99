"""Learning from data assimilation: surrogates and model-error corrections fitted to analyses.

The "ML" half of the offline DA → ML iteration (Brajard et al. 2020; Farchi et al.
2021): a DA run gives analyses and their uncertainty ([`AnalysisDataset`][]); they are
split into training and validation segments by blocks in time
([`train_validation_split`][]), cut into rollout examples ([`rollout_pairs`][]), and a
[`Trainer`][] fits the learnt part of a hybrid model (or a whole surrogate) by
minimising the inverse-variance-weighted multi-step [`RolloutLoss`][], with early
stopping and resumable checkpoints. Online, [`online_fourdvar`][] learns the model's
parameters inside the DA cycle instead: they are part of every 4D-Var window's control
(Farchi et al. 2021, 2023), or [`online_replay_fourdvar`][] trains it a few steps per
window on a replay buffer of the analyses the DA with the current model produces.

```python
train, validation = train_validation_split(AnalysisDataset.from_trajectory(run), 0.2, key=k1)
trainer = Trainer(model, rollout_pairs(train, 4), rollout_pairs(validation, 4), key=k2,
                  steps=5000, patience=10, checkpoint_dir="checkpoints/l96_surrogate")
result = trainer.fit()   # result.model: best validation parameters; result.history
```
"""

from ._data import AnalysisDataset as AnalysisDataset
from ._data import RolloutPairs as RolloutPairs
from ._data import rollout_pairs as rollout_pairs
from ._data import train_validation_split as train_validation_split
from ._em import TransitionFit as TransitionFit
from ._em import fit_transitions as fit_transitions
from ._em import model_error_variance as model_error_variance
from ._loss import RolloutLoss as RolloutLoss
from ._loss import rollout as rollout
from ._online import OnlineState as OnlineState
from ._online import OnlineWindows as OnlineWindows
from ._online import online_fourdvar as online_fourdvar
from ._replay import ReplayState as ReplayState
from ._replay import ReplayWindows as ReplayWindows
from ._replay import online_replay_fourdvar as online_replay_fourdvar
from ._trainer import History as History
from ._trainer import Trainer as Trainer
from ._trainer import TrainResult as TrainResult
from ._trainer import TrainState as TrainState
from ._trainer import default_trainable as default_trainable

__all__ = [
    "AnalysisDataset",
    "History",
    "OnlineState",
    "OnlineWindows",
    "ReplayState",
    "ReplayWindows",
    "RolloutLoss",
    "RolloutPairs",
    "TrainResult",
    "TrainState",
    "Trainer",
    "TransitionFit",
    "default_trainable",
    "fit_transitions",
    "model_error_variance",
    "online_fourdvar",
    "online_replay_fourdvar",
    "rollout",
    "rollout_pairs",
    "train_validation_split",
]
