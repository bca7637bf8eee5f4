"""``python -m kvfleet.services.planner [--config FILE] [--address-file FILE]``"""

from kvfleet.common.config import PlannerSettings
from kvfleet.common.service_main import service_main
from kvfleet.services.planner.server import start

if __name__ == "__main__":
    service_main("kvfleet.services.planner", PlannerSettings, start)
