"""RLHF stages (grpo, ppo): role worker groups, rollouts, the algorithms and the driver."""
