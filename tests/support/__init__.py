"""Helpers shared by the test modules: worker threads with bounded waits
(:mod:`support.threads`), a hand-moved clock (:mod:`support.clocks`), and the contract suites'
shared pieces (:mod:`support.contract`)."""
