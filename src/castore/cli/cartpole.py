"""A deterministic CartPole and a REINFORCE learner for ``castore demo``; torch only, no gym.

The policy reads the state through a frozen random-feature encoder (1 MiB, like a
pretrained backbone) and trains a small head with Adam. The evaluation score is a pure
function of the weights: fixed start states, greedy actions, no sampling. A checkpoint
loaded back therefore scores exactly what it scored when it was saved.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["HIDDEN", "Policy", "evaluate", "make_optimizer", "train_epoch"]

HIDDEN = 512
_GRAVITY, _CART_MASS, _POLE_MASS, _HALF_POLE, _FORCE, _TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
_TOTAL_MASS = _CART_MASS + _POLE_MASS
_POLE_MOMENT = _POLE_MASS * _HALF_POLE
_X_LIMIT, _THETA_LIMIT = 2.4, 12 * math.pi / 180
_MAX_STEPS = 200
_EVAL_EPISODES, _EVAL_SEED = 16, 1234
_TRAIN_EPISODES, _GAMMA, _LR = 32, 0.99, 0.01


class Policy(nn.Module):
    """Logits of pushing the cart left or right; only ``head`` is trained."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(4, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh()
        )
        self.encoder.requires_grad_(False)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(state))


def make_optimizer(policy: Policy) -> torch.optim.Adam:
    return torch.optim.Adam(policy.head.parameters(), lr=_LR)


def evaluate(policy: Policy) -> float:
    """Mean steps balanced over fixed start states with greedy actions (max 200)."""
    starts = _start_states(_EVAL_EPISODES, torch.Generator().manual_seed(_EVAL_SEED))
    with torch.no_grad():
        _, alive = _rollout(policy, starts, None)
    return alive.sum(0).float().mean().item()


def train_epoch(
    policy: Policy, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> tuple[float, int]:
    """One REINFORCE update from sampled episodes; their mean return and total steps."""
    log_probs, alive = _rollout(policy, _start_states(_TRAIN_EPISODES, generator), generator)
    rewards = alive.float()
    returns = torch.zeros_like(rewards)
    ahead = torch.zeros(rewards.shape[1])
    for t in range(rewards.shape[0] - 1, -1, -1):
        ahead = rewards[t] + _GAMMA * ahead
        returns[t] = ahead
    valid = returns[alive]
    advantage = (returns - valid.mean()) / (valid.std() + 1e-8)
    loss = -(log_probs * advantage * rewards).sum() / rewards.sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return rewards.sum(0).mean().item(), int(rewards.sum().item())


def _start_states(n: int, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, 4, generator=generator) - 0.5) * 0.1


def _physics(state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler step of the classic cart-pole equations, batched; also whether it fell."""
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = (action.to(state.dtype) * 2 - 1) * _FORCE
    cos, sin = theta.cos(), theta.sin()
    temp = (force + _POLE_MOMENT * theta_dot**2 * sin) / _TOTAL_MASS
    theta_acc = (_GRAVITY * sin - cos * temp) / (
        _HALF_POLE * (4 / 3 - _POLE_MASS * cos**2 / _TOTAL_MASS)
    )
    x_acc = temp - _POLE_MOMENT * theta_acc * cos / _TOTAL_MASS
    state = torch.stack(
        [
            x + _TAU * x_dot,
            x_dot + _TAU * x_acc,
            theta + _TAU * theta_dot,
            theta_dot + _TAU * theta_acc,
        ],
        dim=-1,
    )
    fell = (state[:, 0].abs() > _X_LIMIT) | (state[:, 2].abs() > _THETA_LIMIT)
    return state, fell


def _rollout(
    policy: Policy, state: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Play every episode until it falls or hits the step limit.

    Returns the log-probabilities of the sampled actions (empty when greedy, i.e. without
    a generator) and a [steps, episodes] mask of the steps each episode was still up.
    """
    log_probs, alive = [], []
    up = torch.ones(state.shape[0], dtype=torch.bool)
    for _ in range(_MAX_STEPS):
        logits = policy(state)
        if generator is None:
            action = logits.argmax(-1)
        else:
            log_p = torch.log_softmax(logits, -1)
            action = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(-1)
            log_probs.append(log_p.gather(-1, action[:, None]).squeeze(-1))
        alive.append(up)
        state, fell = _physics(state, action)
        up = up & ~fell
        if not up.any():
            break
    return (torch.stack(log_probs) if log_probs else torch.empty(0)), torch.stack(alive)
