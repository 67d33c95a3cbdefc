"""A PPO run on CartPole for the storage benchmark, small enough for two CPU cores.

The environment is CartPole-v1 (Gymnasium's constants, episodes cut at 500 steps)
vectorised in torch, so the benchmark installs no gym and one seed gives one run. The
agent is an MLP actor-critic trained with PPO's clipped objective (Schulman et al.
2017) as CleanRL's ``ppo.py`` does it: GAE, normalised advantages, a few epochs of
shuffled minibatches per rollout, Adam with gradient clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["PPO", "PPOConfig"]

OBSERVATIONS = 4
ACTIONS = 2


@dataclass(frozen=True, slots=True)
class PPOConfig:
    """Sizes and hyperparameters; ``iterations`` rollouts and updates per checkpoint."""

    hidden: int = 256
    envs: int = 8
    steps: int = 128
    epochs: int = 4
    minibatches: int = 4
    iterations: int = 2
    lr: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5


class CartPole:
    """CartPole-v1 dynamics (Euler steps) for ``n`` environments; ended ones restart."""

    gravity = 9.8
    cart_mass = 1.0
    pole_mass = 0.1
    half_length = 0.5
    force = 10.0
    tau = 0.02
    max_angle = 12 * 2 * math.pi / 360
    max_x = 2.4
    max_steps = 500

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.state = self._initial(n)
        self.steps = torch.zeros(n, dtype=torch.long)
        self.returns = torch.zeros(n)

    def _initial(self, n: int) -> torch.Tensor:
        return torch.rand(n, 4, generator=self.generator).mul_(0.1).sub_(0.05)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """Advance every environment; return observations, done flags, finished returns."""
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        force = torch.where(action == 1, self.force, -self.force)
        total_mass = self.cart_mass + self.pole_mass
        pole_moment = self.pole_mass * self.half_length
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + pole_moment * theta_dot**2 * sin) / total_mass
        theta_acc = (self.gravity * sin - cos * temp) / (
            self.half_length * (4.0 / 3.0 - self.pole_mass * cos**2 / total_mass)
        )
        x_acc = temp - pole_moment * theta_acc * cos / total_mass
        self.state = torch.stack(
            [
                x + self.tau * x_dot,
                x_dot + self.tau * x_acc,
                theta + self.tau * theta_dot,
                theta_dot + self.tau * theta_acc,
            ],
            dim=1,
        )
        self.steps += 1
        self.returns += 1.0
        done = (
            (self.state[:, 0].abs() > self.max_x)
            | (self.state[:, 2].abs() > self.max_angle)
            | (self.steps >= self.max_steps)
        )
        finished = self.returns[done].tolist()
        if finished:
            self.state[done] = self._initial(len(finished))
            self.steps[done] = 0
            self.returns[done] = 0.0
        return self.state.clone(), done.float(), finished


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, outputs),
    )


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (two hidden layers each), as CleanRL's CartPole agent."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.actor = _mlp(OBSERVATIONS, hidden, ACTIONS)
        self.critic = _mlp(OBSERVATIONS, hidden, 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.log_softmax(self.actor(obs), dim=-1), self.critic(obs).squeeze(-1)


class PPO:
    """The agent, its optimizer and environments; ``train`` runs to the next checkpoint.

    The model's initial weights come from torch's global generator (seed it first);
    actions and minibatch order from the run's own ``generator``.
    """

    def __init__(self, config: PPOConfig, seed: int) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)
        self.env = CartPole(config.envs, self.generator)
        self.obs = self.env.state.clone()
        self.model = ActorCritic(config.hidden)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=1e-5)

    def train(self) -> str:
        """``config.iterations`` rollouts, each followed by its PPO epochs; the mean return."""
        finished: list[float] = []
        for _ in range(self.config.iterations):
            finished += self._iteration()
        mean = sum(finished) / len(finished) if finished else float("nan")
        return f"return {mean:.1f}"

    def _iteration(self) -> list[float]:
        c = self.config
        obs = torch.empty(c.steps, c.envs, OBSERVATIONS)
        actions = torch.empty(c.steps, c.envs, dtype=torch.long)
        log_probs, values = torch.empty(c.steps, c.envs), torch.empty(c.steps, c.envs)
        dones = torch.empty(c.steps, c.envs)
        finished: list[float] = []
        with torch.no_grad():
            for t in range(c.steps):
                obs[t] = self.obs
                log_p, values[t] = self.model(self.obs)
                actions[t] = torch.multinomial(log_p.exp(), 1, generator=self.generator).squeeze(1)
                log_probs[t] = log_p.gather(1, actions[t, :, None]).squeeze(1)
                self.obs, dones[t], ended = self.env.step(actions[t])
                finished += ended
            _, next_value = self.model(self.obs)
        advantages = self._gae(values, next_value, dones)
        returns = advantages + values
        self._update(
            obs.flatten(0, 1),
            actions.flatten(),
            log_probs.flatten(),
            advantages.flatten(),
            returns.flatten(),
        )
        return finished

    def _gae(
        self, values: torch.Tensor, next_value: torch.Tensor, dones: torch.Tensor
    ) -> torch.Tensor:
        """Generalised advantage estimates; ``dones[t]`` means step t ended its episode."""
        c = self.config
        advantages = torch.zeros_like(values)
        running = torch.zeros_like(next_value)
        for t in reversed(range(c.steps)):
            following = values[t + 1] if t + 1 < c.steps else next_value
            alive = 1.0 - dones[t]
            delta = 1.0 + c.gamma * following * alive - values[t]
            running = delta + c.gamma * c.gae_lambda * alive * running
            advantages[t] = running
        return advantages

    def _update(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> None:
        c = self.config
        size = obs.shape[0] // c.minibatches
        for _ in range(c.epochs):
            order = torch.randperm(obs.shape[0], generator=self.generator)
            for start in range(0, size * c.minibatches, size):
                batch = order[start : start + size]
                log_p, value = self.model(obs[batch])
                log_prob = log_p.gather(1, actions[batch, None]).squeeze(1)
                ratio = (log_prob - old_log_probs[batch]).exp()
                adv = advantages[batch]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = -torch.min(
                    ratio * adv, ratio.clamp(1 - c.clip, 1 + c.clip) * adv
                ).mean()
                value_loss = 0.5 * (value - returns[batch]).pow(2).mean()
                entropy = -(log_p.exp() * log_p).sum(-1).mean()
                loss = policy_loss + c.value_coef * value_loss - c.entropy_coef * entropy
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                self.optimizer.step()
