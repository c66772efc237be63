"""The `eval` stage: held-out loss, multiple-choice accuracy and greedy generations for several models at once.

`inputs` reads and checks what is measured (on the driver, no torch), `scoring` holds the model maths and the Ray
Data scorer, `report` turns per-item results into the comparison table, and `stage` wires them together.
"""
