"""Platform devices, one file each: 16550 UART, 8259 PIC pair, 8254 PIT, debug-exit port."""

from vmirom.machine.devices.bus import PortBus
from vmirom.machine.devices.debugexit import DebugExit
from vmirom.machine.devices.pic import PicPair
from vmirom.machine.devices.pit import Pit
from vmirom.machine.devices.uart import Uart16550

__all__ = ["PortBus", "DebugExit", "PicPair", "Pit", "Uart16550"]
