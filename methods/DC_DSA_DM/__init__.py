"""DC, DSA and DM dataset distillation: the CLIs main.py / main_DM.py and the modules they use."""
