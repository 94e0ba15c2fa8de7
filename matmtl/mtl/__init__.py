"""A small, general multi-task optimisation layer for PyTorch: loss balancing
(static, uncertainty, GradNorm), gradient surgery (PCGrad, half-space projection)
through :mod:`matmtl.geometry`, L2-SP soft sharing, and a live gradient-geometry
monitor. :class:`MTLBackward` replaces ``loss.backward()`` in one call."""
from .balance import BALANCERS, Balancer, GradNorm, Static, Uncertainty, make_balancer
from .gradients import shared_grads
from .monitor import GeometryMonitor
from .step import MTLBackward
from .surgery import SURGERIES, combine

__all__ = ["MTLBackward", "GeometryMonitor", "Balancer", "Static", "Uncertainty", "GradNorm", "BALANCERS",
           "make_balancer", "SURGERIES", "combine", "shared_grads"]
