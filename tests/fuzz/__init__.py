"""The bad-input fuzz harness: structured mutators over real inputs (``elfmut``,
``cases``), the corpus they start from (``corpus``), the runner that judges each command
run (``runner``) and the loop that counts outcomes (``campaign``).  ``test_fuzz.py`` runs
it with a fixed seed and budget; ``bench/fuzz_campaign.py`` runs it long."""
