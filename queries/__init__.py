"""The atlas's named queries: one ``<name>.sql`` file per question (see ``atlas.queries``).

A package so that the ``.sql`` files ship inside the wheel and are found next to this file.
"""
