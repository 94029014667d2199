"""Adaptive-attack evaluation: PGD-EOT, BPDA+EOT, low-frequency PGD, AutoAttack-rand, voting,
sharding and reports."""
