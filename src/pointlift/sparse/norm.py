"""Normalisation and activations applied to the features of the active sites only."""

from __future__ import annotations

from torch import nn

from pointlift.sparse.tensor import SparseTensor


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over active sites; state-dict names equal nn.BatchNorm's (inflation copies them)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(super().forward(x.features))


class _FeatureWise:
    """Mixin: apply a torch activation to a SparseTensor's features (or to a plain tensor)."""

    def forward(self, x):
        if isinstance(x, SparseTensor):
            return x.replace(super().forward(x.features))
        return super().forward(x)


class SparseReLU(_FeatureWise, nn.ReLU):
    pass


class SparseReLU6(_FeatureWise, nn.ReLU6):
    pass


class SparseSiLU(_FeatureWise, nn.SiLU):
    pass


class SparseGELU(_FeatureWise, nn.GELU):
    pass


class SparseLeakyReLU(_FeatureWise, nn.LeakyReLU):
    pass


class SparseDropout(_FeatureWise, nn.Dropout):
    pass


class SparseIdentity(nn.Identity):
    pass
