"""The six target regions of the ketamine-PTSD circuit, as literature MNI coordinates.

Coordinates are MNI152 millimetres (x right, y anterior, z superior). Regions that the
literature reports bilaterally are a pair of spheres that together form one region; midline
regions are one sphere. These are the simulator's planting sites and the default ROI set.

Sources (peak or centre coordinates, rounded to 2 mm):
- amygdala (±22, −4, −18): basolateral/centromedial amygdala peak for fearful faces,
  Etkin et al. 2004 Neuron 44:1043, and the amygdala seeds of Etkin & Wager 2007
  Am J Psychiatry 164:1476 (PTSD meta-analysis).
- vmPFC (0, 44, −12): ventromedial prefrontal cortex seed of the fear-extinction and PTSD
  literature, Milad et al. 2009 Biol Psychiatry 66:1075; Etkin et al. 2011 TICS 15:85.
- rACC (0, 40, 4): pregenual/rostral ACC peak of conflict regulation, Etkin et al. 2006
  Neuron 51:871 (emotional face–word Stroop).
- dACC (0, 20, 40): dorsal ACC / dmPFC peak of conflict monitoring, Etkin et al. 2006
  Neuron 51:871; Etkin et al. 2011 TICS 15:85.
- anterior hippocampus (±28, −18, −16): hippocampal head, Etkin & Wager 2007; Milad et
  al. 2009 (contextual fear, PTSD).
- anterior insula (±36, 20, 0): anterior insula peak in PTSD meta-analysis,
  Etkin & Wager 2007 Am J Psychiatry 164:1476.
"""

from __future__ import annotations

from types import MappingProxyType

# name -> tuple of sphere centres (mm, MNI152)
ROI_CENTRES_MM: MappingProxyType[str, tuple[tuple[float, float, float], ...]] = MappingProxyType(
    {
        "amygdala": ((-22.0, -4.0, -18.0), (22.0, -4.0, -18.0)),
        "vmpfc": ((0.0, 44.0, -12.0),),
        "racc": ((0.0, 40.0, 4.0),),
        "dacc": ((0.0, 20.0, 40.0),),
        "hippocampus_ant": ((-28.0, -18.0, -16.0), (28.0, -18.0, -16.0)),
        "insula_ant": ((-36.0, 20.0, 0.0), (36.0, 20.0, 0.0)),
    }
)

ROI_NAMES: tuple[str, ...] = tuple(ROI_CENTRES_MM)
