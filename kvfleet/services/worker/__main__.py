"""``python -m kvfleet.services.worker [--config FILE] [--address-file FILE]``"""

from kvfleet.common.config import WorkerSettings
from kvfleet.common.service_main import service_main
from kvfleet.services.worker.server import start

if __name__ == "__main__":
    service_main("kvfleet.services.worker", WorkerSettings, start)
