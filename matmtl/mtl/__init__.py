"""A small, general multi-task optimisation layer for PyTorch: loss balancing
(static, uncertainty, GradNorm), gradient surgery (PCGrad, half-space projection)
through :mod:`matmtl.geometry`, L2-SP soft sharing, and a live gradient-geometry
monitor. :class:`MTLBackward` replaces ``loss.backward()`` in one call; balancers and
surgeries are small strategy objects handed to it."""

from .backward import MTLBackward
from .balance import BALANCERS, Balancer, GradNorm, Static, Uncertainty, balancer_from
from .gradients import shared_grads
from .monitor import GeometryMonitor
from .surgery import SURGERIES, HalfSpace, PCGrad, Sum, Surgery, surgery_from

__all__ = [
    "MTLBackward",
    "GeometryMonitor",
    "Balancer",
    "Static",
    "Uncertainty",
    "GradNorm",
    "BALANCERS",
    "balancer_from",
    "Surgery",
    "Sum",
    "PCGrad",
    "HalfSpace",
    "SURGERIES",
    "surgery_from",
    "shared_grads",
]
