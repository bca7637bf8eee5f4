"""``python -m kvfleet.services.gateway [--config FILE] [--address-file FILE]``"""

from kvfleet.common.config import GatewaySettings
from kvfleet.common.service_main import service_main
from kvfleet.services.gateway.server import start

if __name__ == "__main__":
    service_main("kvfleet.services.gateway", GatewaySettings, start)
