"""The WDF-named entry points, one mixin per object kind.

Each method validates its arguments in the order the real framework does
(the ``*api.cpp`` files of the framework source) and then calls the object
model. :class:`framework_emu.Framework` inherits them all.
"""
