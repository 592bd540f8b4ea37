"""Probes on language-model activations, the scikit-learn way.

Three classifiers over ragged per-token activations (one ``(T_i, d_model)``
array per text): :class:`AttentionProbeClassifier`,
:class:`MeanProbeClassifier` and :class:`LastTokenProbeClassifier`, plus the
:class:`RaggedArray` container and the :class:`ActivationScaler` transformer.
"""

from ._attention import AttentionProbeClassifier
from ._cv import AttentionProbeClassifierCV
from ._pooled import LastTokenProbeClassifier, MeanProbeClassifier
from ._pooled_cv import LastTokenProbeClassifierCV, MeanProbeClassifierCV
from ._ragged import RaggedArray
from ._scaler import ActivationScaler

__version__ = "0.2.0.dev0"

__all__ = [
    "ActivationScaler",
    "AttentionProbeClassifier",
    "AttentionProbeClassifierCV",
    "LastTokenProbeClassifierCV",
    "MeanProbeClassifierCV",
    "LastTokenProbeClassifier",
    "MeanProbeClassifier",
    "RaggedArray",
    "__version__",
]
