"""The paper's utils_clom/CLoM.py defines CLoM (its main_DM.py also imports a CCLoM it lacks)."""


class CLoM:
    pass
