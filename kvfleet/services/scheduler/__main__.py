"""``python -m kvfleet.services.scheduler [--config FILE] [--address-file FILE]``"""

from kvfleet.common.config import SchedulerSettings
from kvfleet.common.service_main import service_main
from kvfleet.services.scheduler.server import start

if __name__ == "__main__":
    service_main("kvfleet.services.scheduler", SchedulerSettings, start)
