"""The experiment machinery above the library: the keyed step pipeline, SLURM submission, the demo and
replication grids, result tables and figures. scripts/, plots/, train.py and attack.py use it; the wheel
ships only kwta.
"""
