"""Baselines in the one training harness: SUBY, RWY, SUBG, RWG, GroupDRO, JTT, DFR.

`run_method` lives in `spurjax.baselines.runner`; the GroupDRO loss with the other losses in
`spurjax.train.losses`.
"""
