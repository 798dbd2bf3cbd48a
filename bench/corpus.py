"""Evaluation text, never used for calibration (opinfer/models/minilm/engine.py has
the calibration sentences)."""

SENTENCES = [
    "The committee postponed the vote until next Tuesday.",
    "Bananas are an excellent source of potassium.",
    "He fixed the leaking faucet with a new washer.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "Can you recommend a good book about medieval history?",
    "The stock market fell sharply after the announcement.",
    "Children were building sandcastles on the beach.",
    "Neural networks learn representations from data.",
    "The old bridge was closed for repairs last winter.",
    "My grandmother makes the best apple pie in town.",
    "The orchestra performed Beethoven's ninth symphony.",
    "Wildfires spread quickly through the dry forest.",
    "Is it safe to drink tap water in this city?",
    "The startup raised twenty million dollars in its first round.",
    "A gentle breeze rustled the leaves of the oak tree.",
    "The detective examined the footprints near the window.",
    "Solar panels convert sunlight directly into electricity.",
    "We watched the sunset from the top of the hill.",
    "The new smartphone has a larger battery and a better camera.",
    "Doctors recommend at least seven hours of sleep per night.",
    "The river flooded the village after days of heavy rain.",
    "She is learning to speak Japanese before her trip to Tokyo.",
    "The library extended its opening hours during exam season.",
    "Traffic on the highway was backed up for miles.",
    "The chef seasoned the soup with fresh basil and garlic.",
    "Astronomers discovered a planet orbiting a distant star.",
    "The printer is out of ink again.",
    "He apologized for arriving late to the meeting.",
    "The hikers reached the summit just before noon.",
    "Vaccines train the immune system to recognize pathogens.",
    "The kids played football in the park until dark.",
    "Our team won the championship for the third year in a row.",
    "The software update fixed several security vulnerabilities.",
    "A flock of geese flew south for the winter.",
    "The lawyer argued that the contract was invalid.",
    "Fresh bread smells wonderful in the morning.",
    "The museum's new wing will open to the public in May.",
    "Electric cars are becoming more affordable each year.",
    "The teacher handed back the graded essays.",
    "Coffee prices rose because of a poor harvest in Brazil.",
    "The puppy chewed on my favorite pair of shoes.",
    "The government announced new measures to reduce pollution.",
    "He played a beautiful melody on the piano.",
    "The train to Paris departs at half past seven.",
    "Scientists are studying how bees navigate using the sun.",
    "I need to renew my passport before the summer holidays.",
    "The restaurant was fully booked on Saturday night.",
    "Heavy snow caused the school to close early.",
    "The novel tells the story of a family across three generations.",
    "Blockchains record transactions in an append-only ledger.",
]

# Held-out prose for next-token agreement (SmolLM2): plain paragraphs.
PROSE = """The history of the bicycle begins in the early nineteenth century, when inventors in Europe
experimented with two-wheeled machines pushed along by the rider's feet. Over the following decades,
pedals, chains and pneumatic tyres turned a curiosity into one of the most efficient forms of transport
ever devised. Today bicycles carry commuters through crowded cities, deliver parcels, and race across
mountain passes, while engineers continue to refine frames made of steel, aluminium and carbon fibre.
Cities that invest in protected lanes often see cycling grow quickly, because people choose to ride when
they feel safe. Doctors point out that regular cycling strengthens the heart and lungs, and economists
note that it reduces congestion and pollution at very little cost to the public purse."""
